"""Placeholder until its probes land."""
import streamlit as st

st.title("lens")
