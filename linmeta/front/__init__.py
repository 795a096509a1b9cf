"""The front (top layer): ``linmeta verify`` (:mod:`.verify`), the theory report
(:mod:`.report`), figures from stored results (:mod:`.plotting`) and the command line
(:mod:`.cli`). It may import every layer below."""
