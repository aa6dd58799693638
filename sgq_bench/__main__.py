"""``python -m sgq_bench``: the same command line as the ``sgq-bench`` script."""

from sgq_bench.cli import main

if __name__ == "__main__":
    main(prog_name="sgq-bench")
