"""The application layer, on top of every other package: the ``reenact`` command line, the quickstart and the demo.
It is the only code that may import (or name by string) every package of the suite."""
