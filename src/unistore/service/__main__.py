"""``python -m unistore.service``: run the file service with uvicorn and print its address."""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host``/``--port``, build the app from the environment and serve it."""
    parser = argparse.ArgumentParser(prog="unistore serve", description="Run the unistore file service.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    import uvicorn

    from . import create_app

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = create_app()
    storage = app.state.storage
    where = getattr(storage, "root", None)
    print(f"unistore file service: http://{args.host}:{args.port}  (backend {storage.name}", end="")
    print(f", files in {where})" if where else ")")
    print(f"  health:  http://{args.host}:{args.port}/_ops/health")
    print(f"  API:     http://{args.host}:{args.port}/docs")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
