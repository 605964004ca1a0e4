"""Code that runs on the controller: one process per run (the xdist controller with ``-n``,
else the lone pytest process, which then also runs the worker side).

    run          WecController: the run's state and hooks (stack, workers' input, outputs)
    broker       starts the embedded stack when a worker first asks for it (xdist runs)
    collector    a load run's results in, the watch, the outputs at the end
    watch        what the collector watches: silent workers, a stalled CA, saturation
    aggregator   HDR histograms per chain, endpoint and second (histogram: the HDR type)
    outputs      summary.json, benchmark.json; terminal: the tables and the live line
    resultlog    results.jsonl / results.msgpack; rebuild: outputs again from a log
    dashboard    the live page (liveview: its data); report_html: report.html
    gating       thresholds and the exit status; baseline: saved runs and comparisons

Nothing is imported here, so that importing one module costs only that module.
"""
