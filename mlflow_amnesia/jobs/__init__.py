"""The commands' jobs: :mod:`.train`, :mod:`.forget`, :mod:`.purge`, :mod:`.audit`, :mod:`.lineage`,
:mod:`.records`, :mod:`.verify`, and the option checks they share with the CLI (:mod:`.validation`).
Each composes the layers below; none is imported by them."""
