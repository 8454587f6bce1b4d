"""Gradio demo: certify, attack and look inside provably Lipschitz CNNs (BCOP, Li et al. 2019).

``python app.py`` serves the MNIST models from the Hugging Face Hub when it answers, else from
``checkpoints/`` (``--hub-owner ""`` for the embedded checkpoints only). This file only parses
the arguments, assembles the page from one ``create_tab`` per tab (package ``demo/``),
configures the queue and launches; every number on the page comes from the ``bcop`` library.
Each action is also a named API endpoint for ``gradio_client``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import gradio as gr
import torch

from bcop.deprecation import warn_renamed
from bcop.hub import hub_owner
from demo import certify_tab, gradients_tab, models_tab, orthogonality_tab, wasserstein_tab
from demo.store import ModelStore

CSS = """
#model-input img, #upload-input img {
  image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%;
}
#models-table { overflow-x: auto; }
#models-table th { white-space: nowrap; }
#models-table td, #models-table td code { white-space: normal; word-break: normal; overflow-wrap: normal; }
#models-table td:first-child { white-space: nowrap; }
"""
# A drawing needs the brush: select it when the canvas appears and again after Clear.
HEAD = """<script>
new MutationObserver(() => {
  const root = document.querySelector("#sketch-input");
  if (!root || !root.offsetParent) return;
  const tools = [...root.querySelectorAll("button[aria-label='Brush'], button[aria-label='Erase']")];
  if (tools.length && !tools.some((b) => b.classList.contains("highlight"))) tools[0].click();
}).observe(document.documentElement, {childList: true, subtree: true, attributes: true});
</script>"""


def build_demo(owner: str | None = None) -> gr.Blocks:
    """The page; models come from the Hub owner ``owner`` (default :func:`bcop.hub.hub_owner`,
    "" for none) when the Hub answers, else from :func:`bcop.hub.checkpoints_dir`."""
    store = ModelStore(owner)
    with gr.Blocks(title="BCOP: provably robust CNNs") as demo:
        gr.Markdown(
            "# Provably Lipschitz CNNs with BCOP\n"
            "Block Convolution Orthogonal Parameterization (Li et al., NeurIPS 2019) makes every "
            "convolution orthogonal, so a network's Lipschitz bound is tight and its certified "
            "robustness radii are large. Below, an MNIST digit and what each network proves about "
            f"it: draw, upload or pick another. {store.where()}"
        )
        with gr.Tabs():
            with gr.Tab("Certify & attack"):
                certify = certify_tab.create_tab(store)
            with gr.Tab("Gradient norms") as tab:
                gradients_tab.create_tab(store, tab, certify)
            with gr.Tab("Orthogonality") as tab:
                orthogonality_tab.create_tab(store, tab)
            with gr.Tab("Wasserstein"):
                wasserstein_tab.create_tab()
            with gr.Tab("Models"):
                models_tab.create_tab(store, demo)
    demo.store = store  # type: ignore[attr-defined]  (for start-up warming and tests)
    return demo


def configure_queue(demo: gr.Blocks, concurrency: int = 2, max_size: int = 64) -> gr.Blocks:
    """Queue every event: at most ``concurrency`` of a kind at once, ``max_size`` waiting."""
    return demo.queue(default_concurrency_limit=concurrency, max_size=max_size)


def launch_options(host: str, port: int, share: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` shared by ``main``, the tests and the benchmarks."""
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        "css": CSS,
        "head": HEAD,
        "max_file_size": "25mb",
        "show_error": False,
        "footer_links": ["api", "gradio"],
    }


def launch(
    owner: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    concurrency: int = 2,
    warm: bool = True,
) -> gr.Blocks:
    """Build, queue and start the app without blocking (for ``main``, tests and benchmarks).

    With ``warm``, every model is loaded in a background thread once the server is up.
    """
    demo = configure_queue(build_demo(owner), concurrency=concurrency)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(host, port, share))
    if warm:
        threading.Thread(target=demo.store.warm, name="warm-models", daemon=True).start()
    return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="BCOP demo: certify, attack and inspect Lipschitz CNNs")
    env = os.environ.get
    parser.add_argument(
        "--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"), help="default $GRADIO_SERVER_NAME"
    )
    parser.add_argument(
        "--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")), help="default 7860"
    )
    parser.add_argument(
        "--hub-owner", default=hub_owner(), help='Hub owner of the models ("": checkpoints/ only)'
    )
    parser.add_argument("--hub-repo", dest="old_hub_repo", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--share", action="store_true", help="create a public gradio.live link (off by default)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per request (default 1)")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="quick requests served at once (default 2)"
    )
    parser.add_argument("--no-warm", action="store_true", help="load models on first use, not at start-up")
    args = parser.parse_args(argv)
    if args.old_hub_repo is not None:  # the deprecated name of --hub-owner: it names an owner
        warn_renamed("app.py --hub-repo", "--hub-owner", stacklevel=2)
        args.hub_owner = args.old_hub_repo
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, args.threads))
    demo = launch(args.hub_owner, args.host, args.port, args.share, args.concurrency, warm=not args.no_warm)
    print(f"BCOP demo running on {demo.local_url}", flush=True)
    if demo.share_url:
        print(f"public link: {demo.share_url}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
