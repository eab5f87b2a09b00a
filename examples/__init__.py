"""Runnable apps for each example of the storage API guide (``docs``: storage-api.md).

Each module keeps the guide's code as written (only the import line reads
``unistore``) and adds the glue the guide leaves out. Run one with, e.g.::

    uvicorn examples.documents:app
"""
