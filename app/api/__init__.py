"""The HTTP surface: one router per route group."""
