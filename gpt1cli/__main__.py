"""``python -m gpt1cli`` (and ``torchrun -m gpt1cli``) runs the ``gpt1`` command."""

from .cli.app import main

if __name__ == "__main__":
    main()
