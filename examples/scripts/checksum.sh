#!/bin/sh
# Example of a user script run by an Exec stage: checksums every file it is given.
# Usage: checksum.sh DIR > sums.txt
find "$1" -type f | sort | while read -r f; do
    printf '%s  %s\n' "$(cksum < "$f" | cut -d' ' -f1)" "$f"
done
