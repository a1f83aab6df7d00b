"""Log: streaming activation statistics and the logging stage."""
