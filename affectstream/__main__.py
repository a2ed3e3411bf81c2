"""``python -m affectstream``: the ``affectstream`` command."""
from affectstream.cli import main

main()
