"""`python -m training <model> [flags]`: dispatch to `training.<model>.main(argv)`.

Each model module is imported only when its subcommand runs, so `--help` stays fast and a model's
dependencies are not needed to train another one. To add a model, add its module name to `MODELS`
and give the module a `main(argv: Sequence[str] | None) -> int`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

MODELS: dict[str, str] = {
    "digits": "training.digits",
    "catdog": "training.catdog",
    "sentiment": "training.sentiment",
}

# Modules that import Keras at their top (custom layers registered at import): even their --help
# loads TensorFlow, so it is imported quietly first for them too.
KERAS_AT_IMPORT = frozenset({"sentiment"})


def usage() -> str:
    return f"usage: python -m training {{{','.join(MODELS)}}} [flags]   (python -m training <model> --help)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in MODELS:
        print(f"unknown model {name!r}\n{usage()}", file=sys.stderr)
        return 2
    if not {"-h", "--help"} & set(rest) or name in KERAS_AT_IMPORT:
        from training.common import import_tensorflow_quietly

        import_tensorflow_quietly()  # before Keras: no "failed call to cuInit" on a CPU machine
    module = importlib.import_module(MODELS[name])
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
