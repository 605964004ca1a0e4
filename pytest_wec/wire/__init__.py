"""What crosses between the controller and the workers, as plain data (never pickles).

    results      RequestResult and ChainResult, the records every exchange and chain make
    stream       the result channel's wire format over a Redis stream (batches, statuses, ends)
    sink         its worker end, ResultSink
    source       its controller end, ResultSource
    control      the live control hash (target, stop) the dashboard writes, workers read

Nothing is imported here, so that importing one module costs only that module.
"""
