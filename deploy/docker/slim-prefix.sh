#!/bin/sh
# Slims a pip install prefix for an image (Dockerfile, builder stage): test suites and debug symbols out.
# Only files with debug sections lose them, and never the libraries auditwheel vendored into `*.libs/`:
# those are patched by patchelf, and binutils' strip breaks them ("ELF load command address/offset not
# page-aligned"). The image lane (tests/images) runs every image so slimmed.
set -eu
prefix="$1"
find "$prefix" -depth -type d -name tests -exec rm -rf {} +
find "$prefix" -type f -name '*.so*' -not -path '*.libs/*' | while read -r library; do
    if readelf -S "$library" 2>/dev/null | grep -q '\.debug_info'; then
        strip --strip-debug "$library"
    fi
done
