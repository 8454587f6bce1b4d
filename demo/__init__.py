"""The Gradio demo's tabs: one module per tab (layout and events, ``create_tab``), figures as
pure data -> figure functions (:mod:`demo.figures`), the served models (:mod:`demo.store`).
The numbers they show come from ``bcop``; ``app.py`` assembles the page and launches it."""
