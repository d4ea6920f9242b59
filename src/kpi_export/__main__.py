from kpi_export.cli import main

main()
