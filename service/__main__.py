"""``python -m service [serve] [flags]``: the same as ``kernelserve serve``."""
import sys

from .cli import main

args = sys.argv[1:]
sys.exit(main(args if args[:1] == ["serve"] or args[:1] in (["-h"], ["--help"]) else ["serve", *args]))
