"""How the bench times: the best of a few runs under a deadline (`runs`), methods side by side
in alternating rounds (`rounds`), and hibachi's steps against the model's forward (`steps`)."""
