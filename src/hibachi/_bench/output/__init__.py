"""A bench run for people: a table per workload (`table`), every figure as JSON (`json_file`),
the charts as PNG (`plot`), the results document (`markdown`), and progress while it runs."""
