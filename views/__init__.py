"""The Streamlit app's pages (one file per page) and the sidebar, state and loading they share."""
