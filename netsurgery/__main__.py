import sys

try:
    from .cli.app import console_main
except KeyboardInterrupt:  # Ctrl-C while Python imports the command line
    sys.stderr.write("netsurgery: interrupted\n")
    sys.exit(130)

console_main()
