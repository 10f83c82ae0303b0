"""The tool servers we ship: each one an MCP server over stdio, runnable on its own.

======================  ==============================================  =====================
module                  tools                                           needs
======================  ==============================================  =====================
``gateway.tools.search``     ``google_search``, ``scrape_website``      ``SERPER_API_KEY``,
                                                                        ``JINA_API_KEY``
``gateway.tools.reading``    ``read_file``                              nothing (markitdown)
``gateway.tools.code``       ``run_python_code``, ``run_command``       ``bwrap`` (Debian
                                                                        ``bubblewrap``) or
                                                                        ``E2B_API_KEY``
``gateway.tools.reasoning``  ``reasoning``                              a model in its env
======================  ==============================================  =====================

``python -m gateway.tools.<name>`` serves one of them on stdin/stdout; an agent config starts it
as a stdio tool server (see ``gateway/configs/tools.yaml``). Every setting comes from the
environment the config gives the server, and every limit has a default (README, "Tools").

A tool that cannot do its job raises :class:`mcp.server.mcpserver.exceptions.ToolError`: the
model sees a tool error with a clear message, the task goes on. Work that grows with its input
(document conversion, sandboxed code) runs in a child process with a deadline and resource
limits, never on the server's event loop; cancelling the MCP request kills that process group.
"""
