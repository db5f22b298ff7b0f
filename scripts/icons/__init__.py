"""The steps of the icon-corpus build (``python -m scripts.build_icons``), one module each.

* :mod:`scripts.icons.themes`: the theme packages, their formats and the default holdout.
* :mod:`scripts.icons.fetch`: step 1, download and unpack the packages (and ``rsvg-convert``).
* :mod:`scripts.icons.candidates`: step 2, the usable files of a theme per icon name, digit icons
  left out, and the one file chosen per name.
* :mod:`scripts.icons.convert`: step 3, one square RGB image at the corpus size.
* :mod:`scripts.icons.manifest`: step 4, the manifest, ``PROVENANCE.md`` and the ``COMPLETE`` marker.
* :mod:`scripts.icons.corpus`: steps 2 to 4 over unpacked theme folders (``build_corpus``).

``scripts.build_icons`` is the command and re-exports the public names; why the filters and the
holdout are what they are: ``scripts/ICONS_PROVENANCE.md``.
"""
