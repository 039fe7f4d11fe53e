"""Surgery on networks: editing with reference renumbering, merge and split, partial files, multi-head runs."""
