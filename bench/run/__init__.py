"""Running the public operations: what an evaluation needs to resume and to be split
over processes (:mod:`bench.run.resume`)."""
