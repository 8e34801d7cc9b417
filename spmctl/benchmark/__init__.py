"""`spmctl benchmark SUITE`: the field's benchmarks as one resumable job (train -> sample -> eval).

Orchestration only: each stage is the existing command's own code with its own manifest (the
sweep's `sweep.json`, each sample folder's `manifest.jsonl`), so a killed run re-run with the same
command continues where it stopped. `state` keeps the run's settings and measured costs, `pins`
what the numbers depend on, `published` the papers' rows, `suites` what each benchmark runs and
scores, `run` the stages, `report` the table. In the layers, benchmark sits between the CLI and
the stages it drives; nothing below it imports it.
"""
