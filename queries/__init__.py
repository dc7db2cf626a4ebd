"""kevo's query engine: the paper's analyses as named SQL, embeddings, figures and an HTML report.

    import queries
    queries.run("amber.kevo", "critical-layers", tau=0.6)   # -> polars.DataFrame
    queries.list_queries()                                  # the named SQL files
"""

from .engine import QueryResult, result, run, run_bound, run_polars
from .library import BoundQuery, NamedQuery, Param, QueryParamError, bind, list_queries, load

__all__ = ["BoundQuery", "NamedQuery", "Param", "QueryParamError", "QueryResult", "bind", "list_queries", "load",
           "result", "run", "run_bound", "run_polars"]
