"""The ``vispre`` command line: the only argparse / LightningCLI layer of the package.

One thin module per subcommand, each with ``main(argv: list[str]) -> int``: :mod:`~vispre.commands.fit`,
:mod:`~vispre.commands.eval`, :mod:`~vispre.commands.export`, :mod:`~vispre.commands.shards`,
:mod:`~vispre.commands.grow`, :mod:`~vispre.commands.bench`; :mod:`~vispre.commands.main` dispatches and
holds the error boundary; :mod:`~vispre.commands.config` reads run configs (``build_from_config``).
Library modules never import this package.
"""

from vispre.commands.main import main

__all__ = ["main"]
