"""The notebook namespace as durable state: fingerprints, serialization with dill, and
tracking what a step changed."""
