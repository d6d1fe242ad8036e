"""Framework-free pieces shared by every command line: the official options, the dataset
layout, the built-in demo data set and the results page. Imports neither TF nor torch."""
