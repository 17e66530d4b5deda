"""Core commands: init-adapter and generate."""

from __future__ import annotations
