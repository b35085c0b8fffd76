"""The sync's three steps, each callable and testable alone (connector.pipeline runs them):

  plan    (plan.py)    source items + ledger + chunker -> windows of DocPlans: which documents
                       changed, their chunks, which points to (re)write. Needs the model's
                       tokenizer, never its weights; writes nothing.
  encode  (encode.py)  windows -> parts: the points of a window with their vectors, from the
                       embedding cache or an Encoder (the swap point of an engine).
  write   (write.py)   parts -> the store and the ledger, in the order that keeps a crash safe;
                       dead letters, documents deferred while the store is down, the circuit breaker.

setup.py builds once per run what the steps derive from the encoder (chunker, projection,
fingerprint, embedding cache); report.py holds the run's counts (SyncReport).
"""
