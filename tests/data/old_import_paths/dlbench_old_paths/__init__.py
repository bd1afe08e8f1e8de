"""A third-party plugin package written against dlbench's import paths before the package was
reshaped (issue 24): the examples of docs/plugins.md at commit 8934433, verbatim, and an observer
that imports from the old module paths and reads the trial info as a dict."""
