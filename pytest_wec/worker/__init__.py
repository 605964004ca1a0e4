"""Code that runs in a worker: each xdist worker, or the lone pytest process without xdist.

    fixtures     the ``wec`` fixture and what stands behind it
    context      ChainContext: one chain run's view of the runtime (client, claims, flows)
    runtime      WorkerRuntime: the network layer, publisher and state store of the process
    items        load mode: the collected chains become this worker's load item
    runner       the load models (closed, open, stages) driving chain runs
    picker       the context-aware choice of the next chain
    publish      challenge publishers (Redis for our challenge server, or a challtestsrv)
    validations  the CA's validation requests seen, to the chain waiting on them (§7.5.1)
    pebble       the embedded Pebble's management API

Nothing is imported here, so that importing one module costs only that module.
"""
