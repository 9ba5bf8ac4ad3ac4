"""Tools for spec authors: check a spec against a file, draft a spec from a file, list specs, export the
spec language as a JSON Schema. Nothing here runs a model; the interpreter never imports this package."""
