"""One module per `impetus` command group; each imports its heavy dependencies inside commands."""
