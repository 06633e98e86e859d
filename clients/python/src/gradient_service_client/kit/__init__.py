"""The autograder kit: run a student's functions in a sandboxed subprocess on seeded networks, grade what they
return through /v1/grade, and write Gradescope, PrairieLearn or JUnit results (``harness.run``; the command line
is ``gradient-service autograde``)."""
