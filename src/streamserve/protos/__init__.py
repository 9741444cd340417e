"""Our own TF Serving / KServe V2 protos and their generated code.

Generated modules live under ``streamserve.protos.gen`` (regenerate with
``python -m streamserve.protos.regenerate``) and register in a private descriptor pool, so
they coexist with tensorflow, tensorflow-serving-api and tritonclient in one process.
Convenience namespaces: ``streamserve.protos.tfs`` (TF Serving) and ``streamserve.protos.v2``.
"""
