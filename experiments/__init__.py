"""Experiments: the course's questions answered with numbers, each runnable in a few minutes.

Each module starts the processes it needs on loopback (127.0.40.x), drives open-loop load at a
constant arrival rate in a few seeded repeats (:mod:`.repeats`), and writes a Markdown table of
medians with their spread, its headlines with every repeat's value, a JSON file of the same
numbers and a PNG plot under ``experiments/results/`` (``python -m experiments.NAME [--quick]
[--out DIR]``, or ``meshctl experiment NAME``).

Glossary:
    open-loop load  requests sent on a fixed schedule, whether or not earlier ones have
                    answered; a latency is measured from the *scheduled* send time, so a
                    stalled server cannot hide its queue by slowing the client down
                    ("coordinated omission").
    brownout        a partial outage: the backend still answers, slowly or with errors.
    lab             the processes of one run and their temporary folder (:mod:`.harness`).
    repeat          one pass over everything an experiment compares, in an order and with
                    randomness drawn from its own seed; a headline is the median over the
                    repeats, with its spread (:mod:`.repeats`).
    backend         a small app with fault knobs, written for the experiments
                    (:mod:`.backend`, :mod:`.chain`, :mod:`.catalog`).

The experiments, and the question each answers:
    retry_storm    what ``retries: 3`` does to a backend in a brownout, and what a budget does
    hedging        what a second request does to a heavy tail's p99, and what it costs
    balancers      which balancer avoids one slow replica among three
    grpc_vs_rest   gRPC and HTTP/1.1 JSON for the same service, through the mesh and direct
    handshakes     what a new TCP + TLS connection per call costs against a pooled one
    timeouts       who keeps working after the caller gave up, and how deadlines stop them
    discovery      how fast callers stop using a moved endpoint: xDS push against DNS TTLs
"""

NAMES = ("retry_storm", "hedging", "balancers", "grpc_vs_rest", "handshakes", "timeouts",
         "discovery")
"""Every experiment, in the order a reader meets the concepts."""
