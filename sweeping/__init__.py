"""`accelopt sweep`: variants of a recipe built through the pipeline, timed side by side, the Pareto frontier and
the pick."""
