"""The generation box of text runs: the run's model continues a prompt, sampled with the chosen temperature and top-k."""

from __future__ import annotations

import streamlit as st
import torch

from blocks.tasks.base import UnknownTokenError
from blocks.training.runs import Run


def generation_box(run: Run) -> None:
    """An expander with a prompt, sampling settings and a button; the continuation is shown as text."""
    with st.expander("Generate text", expanded=True):
        if "generate_prompt" not in st.session_state:
            st.session_state["generate_prompt"] = run.tokenizer.decode(run.task.example(0)[:8])
        prompt = st.text_area("Start from", key="generate_prompt", height=70)
        new, temp, top, seed = st.columns(4)
        n = new.number_input("New tokens", min_value=1, max_value=512, value=48, key="generate_n")
        temperature = temp.slider("Temperature (0: greedy)", 0.0, 2.0, 0.8, 0.05, key="generate_temperature")
        top_k = top.number_input("Top-k (0: all)", 0, run.model.cfg.d_vocab, 0, key="generate_top_k")
        seed_value = seed.number_input("Seed", 0, 2**31 - 1, 0, key="generate_seed")
        if not st.button("Generate", key="generate_go"):
            return
        try:
            ids = run.tokenizer.encode(prompt)
        except UnknownTokenError as err:
            st.error(str(err))
            return
        if not ids:
            st.info("The prompt is empty: type a few words to continue.")
            return
        device = run.model.W_E.device
        out = run.model.generate(
            torch.tensor([ids[-run.model.cfg.n_ctx :]], device=device),
            int(n),
            temperature=float(temperature),
            top_k=int(top_k) or None,
            generator=torch.Generator(device).manual_seed(int(seed_value)),
        )
        st.text(run.tokenizer.decode(out[0].tolist()))
