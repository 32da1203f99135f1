"""The model side of Frameworm: registry, manifests, artefact storage and loaders.

Nothing here imports FastAPI or `app`; imports point one way, `app` -> `models`.
"""
