"""The inpainting-deepfake detection library: plain Python, no Prefect (tasks/ and flows/ wrap it).

Layers, bottom up: ``hashing``, ``storage``, ``images``, ``secrets``, ``devices``; the settings
(``config``, which reads the registries of ``sources``, ``masks``, ``inpaint`` and ``features``);
the stage skeleton (``stages``); the stages, in pipeline order: ``sources``, ``masks``,
``inpaint``, ``split``, ``features``, ``detector``, ``evaluate``; then ``predict`` (a trained
detector bundle) and ``publish``. README "Architecture" has the map and where to change what.
"""
