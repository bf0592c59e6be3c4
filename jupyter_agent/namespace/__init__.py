"""The notebook namespace as durable state: fingerprints, serialization with dill, and
tracking what a step changed, and the files a step wrote beside the notebook."""
