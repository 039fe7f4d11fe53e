"""Detection and evaluation: Darknet preprocessing, box decoding, detect, mAP, timing."""
