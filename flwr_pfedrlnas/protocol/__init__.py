"""The round protocol shared by every method: records, results, the row and the log line."""
