"""The sandbox in a browser: `streamlit run app.py -- --runs DIR` (default runs/).

Layout only: pages live in views/ (one file each), the sidebar and caching in
views/common.py (which also documents the session-state keys), and every number shown
comes from the probes library or from the run's own files.
"""

import logging

import streamlit as st

from blocks.fast import keep_freed_memory
from scratchnn.errors import describe
from views.common import STATE_KEYS

st.set_page_config(page_title="Transformer sandbox", layout="wide")
try:
    keep_freed_memory()  # idempotent; see blocks/fast/memory.py
except ValueError as err:  # a bad SANDBOX_FAST: say so, in one line
    st.error(str(err))
    st.stop()

# Widget state is dropped when a page that owns the widget is not drawn; writing the keys
# back each run keeps a person's choices (prompt, head, threshold...) across pages.
for key in STATE_KEYS:
    if key in st.session_state:
        st.session_state[key] = st.session_state[key]

pages = [
    st.Page("views/overview.py", title="Overview", icon=":material/monitoring:", default=True),
    st.Page("views/flow.py", title="Information flow", icon=":material/account_tree:"),
    st.Page("views/heads.py", title="Attention heads", icon=":material/visibility:"),
    st.Page("views/neurons.py", title="Neurons", icon=":material/neurology:"),
    st.Page("views/lens.py", title="Logit lens and attribution", icon=":material/stacked_line_chart:"),
    st.Page("views/ablate.py", title="Ablate and patch", icon=":material/content_cut:"),
    st.Page("views/circuit.py", title="Circuits", icon=":material/hub:"),
    st.Page("views/features.py", title="SAE features", icon=":material/scatter_plot:"),
]
page = st.navigation(pages)
st.session_state["_page"] = page.url_path  # the page whose selections the address bar carries (views/common.py)
try:
    page.run()
except Exception as err:  # noqa: BLE001 - st.stop and reruns are BaseExceptions and pass through
    # a failure a person can fix (an unreadable file, a full disk, out of memory) is one line on the
    # page; a bug is re-raised, and .streamlit/config.toml shows only its type, never server paths
    line = describe(err)
    if line is None:
        raise
    # a ValueError may also be a bug in a page: the server's log keeps its traceback, the page one line
    logging.getLogger("sandbox.app").warning("shown to the user as one line: %s", line, exc_info=err)
    st.error(line)
