"""Storage layouts: how an upload's bytes wait until completion, one module each.

- ``interface.py``: what the engine asks of a layout (``StorageLayout``, the
  optional ``NumberedChunks``) and the completion attempt they share (``Assembling``);
- ``chunkfiles.py``: each native chunk a staged file ``<n>.<sha256>``;
- ``inplace.py``: native chunks written at their offset in one data file (the default);
- ``append.py``: tus segments appended at the offset (its own door-facing methods: ``engine.appends``);
- ``direct.py``: native chunks straight to a ``ReceivesChunks`` sink, nothing staged;
- ``insink.py``: native chunks as staging objects in the sink (``storage.staging = "sink"``);
- ``staged.py``: what the staged layouts share (handing local files to the sink, hashed);
- ``sinkstaging.py``: what sink staging shares (staging objects written, read back, removed),
  for the in-sink layout and for the append layout when ``spec.staging`` is ``"sink"``.

A new layout: a name in :class:`vezastream.models.Layout`, a module here with a
class that implements ``StorageLayout`` (and ``NumberedChunks`` if it takes
numbered chunks) against ``engine/services.py``'s ``EngineServices``, built in
``UploadEngine.__init__`` and added to the table ``UploadEngine.layout_for`` reads
(the engine dispatches to it there, in one place). New uploads get it where
their layout is chosen: ``UploadEngine.create`` (native uploads, by
``storage.staging`` and ``storage.in_place``), usually behind a setting, or the
code that creates them (``AppendUploads._create_spec`` for tus). Bytes kept
anywhere but local files or staging objects in the sink also need removing in
``UploadEngine._remove_staged`` (which branches on ``in_sink(spec)``).
"""
