"""The project's data builders and offline CLIP tools, run from a checkout as modules.

    python -m scripts.build_digits          # the embedded Digits arrays
    python -m scripts.build_icons           # the icon corpus
    python -m scripts.pretrain_clip ...     # the offline CLIPs

They import each other as ``scripts.<name>`` (no path changes); the icon corpus's build steps are
the subpackage ``scripts.icons``. They are not part of the installed ``tpsnet_plugin`` package.
"""
