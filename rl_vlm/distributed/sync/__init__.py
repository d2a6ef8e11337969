"""Weight sync, learners -> engines: the bucket plan and packing (``plan``), the object-store
transport (``object_store``), the collective transport (``collective``, over the process group of
``group``) and the hook that runs inside every vLLM worker (``engine_hook``)."""
