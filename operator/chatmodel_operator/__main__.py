from chatmodel_operator.main import main

main()
