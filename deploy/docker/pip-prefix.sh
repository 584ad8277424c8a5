#!/bin/sh
# `pip install` into /install, the prefix a Dockerfile packages stage copies into its image. The prefix's
# site-packages is put on PYTHONPATH so that pip sees what an earlier call installed there: torch from
# PyTorch's own index stays, instead of being resolved again from PyPI by the project's `torch>=2.1`.
set -eu
site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib", vars={"base": "/install", "platbase": "/install"}))')"
PYTHONPATH="$site" exec pip install --prefix=/install "$@"
